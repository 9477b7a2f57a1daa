"""ROS-free camera drivers (pyrealsense2) used by ``nodes/camera_node``."""
