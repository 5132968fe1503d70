"""Leftover rollout candidates: a `watchme rollout` killed mid-way may leave its candidate
container (label watchme.rollout-candidate, watchme/candidate.py) and Nginx routing to it.

Called after nginx.apply(): by then this run has applied the registry's site (a site still
routing to the candidate differs from the render, so the safe cycle re-applies it; a refused
apply stops the host before this step), so no route leads to a candidate and it is removed.
"""

from watchme import candidate


def clean() -> None:
    candidate.remove_leftovers(name="Remove leftover rollout candidates (a killed watchme rollout)")
