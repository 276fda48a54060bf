"""siyu.schemas.migrations."""
