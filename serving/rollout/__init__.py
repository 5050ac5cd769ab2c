"""Traffic experiments as operators run them: shadow, canary and A/B between versions.

:mod:`serving.rollout.policy` turns what an operator asks for into a policy (the store keeps it:
serving.store.traffic; the request path applies it: serving.core.routing and
serving.core.shadow), :mod:`serving.rollout.compare` judges the versions' live quality and
:mod:`serving.rollout.control` sets, reads, ends and guards experiments. No web framework here.
"""
