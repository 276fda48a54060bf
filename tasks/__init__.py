"""siyu.tasks."""
