"""Locust user of the staging load test: ``POST /recommend`` for known users.

Run headless by ``movierec.lifecycle.staging.load_test`` (a subprocess, because locust
monkey-patches the standard library with gevent). User ids come from ``MOVIEREC_LOAD_USERS``.
"""

import os
import random

from locust import FastHttpUser, constant, task

USERS = [int(u) for u in os.environ.get("MOVIEREC_LOAD_USERS", "1").split(",")]


class RecommendUser(FastHttpUser):
    """One simulated client asking for ten recommendations at a time."""

    wait_time = constant(0)

    @task
    def recommend(self) -> None:
        """Ask for a random known user's top 10."""
        self.client.post("/recommend", json={"user_id": random.choice(USERS), "top_k": 10})
