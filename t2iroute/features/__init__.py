"""Prompt featurizers: sentence embeddings, lexical complexity, (LLM complexity: a later slot).

Featurizers compose by config: ``features=[embedding,lexical]`` builds one
:class:`ComposedFeaturizer` whose columns are the concatenation, in order.
"""

from t2iroute.features.base import ComposedFeaturizer, Featurizer, build_featurizer

__all__ = ["ComposedFeaturizer", "Featurizer", "build_featurizer"]
