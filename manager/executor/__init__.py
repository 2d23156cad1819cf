"""The trigger executor: leadership, scheduling, dispatch and its metrics."""
