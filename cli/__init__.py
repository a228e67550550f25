"""The shell door: `cicd-worker` commands, pipeline files, local runs, progress, the local Prefect server."""
