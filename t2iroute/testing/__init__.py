"""Helpers that users' tests may import: :mod:`t2iroute.testing.pipelines` (random-weight
pipelines of the real SD-family classes, saved in the hub repos' folder layout) and
:mod:`t2iroute.testing.app` (the Streamlit app served on a loopback port). The runtime never
imports them."""
