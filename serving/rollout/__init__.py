"""Traffic experiments between versions of a model: shadow, canary and A/B.

:mod:`serving.rollout.policy` turns what an operator asks for into a policy (the store keeps it:
serving.store.traffic), :mod:`serving.rollout.route` applies it on the request path,
:mod:`serving.rollout.compare` judges the versions' live quality and :mod:`serving.rollout.control`
sets, reads, ends and guards experiments. No web framework here.
"""
