"""The Ray Serve layer: ingress, one deployment per served model, and the app builder."""
