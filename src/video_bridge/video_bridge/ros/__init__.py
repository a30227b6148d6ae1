"""The ROS 2 adapters: nodes, parameters, launch lineups and the runner."""
