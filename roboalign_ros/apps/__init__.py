"""Programs that drive the package end to end (above the ROS-free core and the nodes)."""
