"""Entry point: ``t2iroute app`` (or ``streamlit run t2iroute/app/streamlit_app.py``)."""

import os

import streamlit as st

from t2iroute.app import BENCH_PAGE, ROUTE_PAGE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
st.set_page_config(page_title="t2iroute", layout="wide")
page = st.navigation(
    [
        st.Page(str(ROUTE_PAGE), title="Route and generate", default=True),
        st.Page(str(BENCH_PAGE), title="Benchmark"),
    ]
)
page.run()
