"""Task-queue clusters (kind: task-queue): `task-map` jobs and `connect`."""
