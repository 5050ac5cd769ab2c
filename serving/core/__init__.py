"""The served models and the way a request reaches them: the registry of served versions,
the predictor, admission (shedding, queue limits, deadlines), the micro-batcher, hot swap.
Nothing here knows HTTP or a web framework."""
