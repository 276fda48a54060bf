"""siyu.deployments."""
