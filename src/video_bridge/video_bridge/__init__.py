"""video_bridge: robot cameras in a web browser, and browser teleop to cmd_vel."""
