"""siyu.blocks."""
