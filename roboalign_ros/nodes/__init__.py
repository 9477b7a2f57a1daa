"""rclpy nodes: each parses parameters, builds core objects and wires topics to them."""
