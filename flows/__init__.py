"""siyu.flows."""
