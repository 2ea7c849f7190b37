"""The serving core: user state, popularity, scoring, the recommender's one batch entry point, the pipeline that builds it."""
