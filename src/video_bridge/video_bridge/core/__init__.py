"""The pure core: wire protocol, stream hub, teleop, codecs, access rules; no rclpy, no sockets."""
