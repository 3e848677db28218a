"""A Flask app whose sign-up view enqueues a welcome e-mail that a worker sends.

    flask --app examples.flask.app run                    # the web app
    flask --app examples.flask.app offload worker         # a worker, in the app's context
    flask --app examples.flask.app offload jobs list      # offload's CLI, on this app

``OFFLOAD_URL`` comes from the app's config (``FLASK_OFFLOAD_URL`` in the environment sets it,
through Flask's ``from_prefixed_env``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

import offload
from offload.contrib.flask import Offload

jobs = Offload()


@jobs.task
def send_welcome(email: str) -> str:
    # Tasks run inside the app's context: its config is at hand.
    return f"{current_app.config['WELCOME_FROM']} welcomed {email}"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(OFFLOAD_URL="sqlite:///welcome.db", WELCOME_FROM="team@example.com")
    app.config.from_prefixed_env()
    app.config.update(config or {})
    jobs.init_app(app)

    @app.post("/signup")
    def signup() -> ResponseReturnValue:
        job = send_welcome.enqueue(request.form["email"])
        return jsonify(id=job.id), 202

    @app.get("/jobs/<job_id>")
    def job_state(job_id: str) -> ResponseReturnValue:
        try:
            job = jobs.app.get_job(job_id)
        except offload.JobNotFound:
            return jsonify(error="no such job"), 404
        body: dict[str, Any] = {"id": job.id, "state": job.state}
        if job.state is offload.JobState.SUCCEEDED:
            body["result"] = job.result(timeout=0)
        return jsonify(body)

    return app
