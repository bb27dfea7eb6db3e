"""The feedback loop: production interactions -> human review -> datasets -> a retrained run proven better ->
deployment with rollback, with lineage and drift watching (docs/feedback-loop.md).

It sits above tunelab.api (it drives training and comparison) beside tunelab.quickstart; the review queue's
storage and its HTTP API live in tunelab.serve (review.py, routes/review.py), where the server mounts them.
Modules: rows (items -> sft/preference/kto rows), export, retrain (the next run's config, training, gates),
gates, registry (deployments in the serve store), deploy (hot swap and rollback through the admin API),
lineage, drift.
"""

# The environment variable holding the server's admin key (deploy, rollback). Here rather than in deploy.py, so that
# the CLI shows it as the --key-env default without importing the deploy machinery (sqlalchemy, tunelab.api).
KEY_ENV = "TUNELAB_ADMIN_KEY"
