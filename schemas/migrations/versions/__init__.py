"""siyu.schemas.migrations.versions."""
