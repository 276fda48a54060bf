"""siyu.sandbox."""
