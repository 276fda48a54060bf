"""siyu.schemas."""
