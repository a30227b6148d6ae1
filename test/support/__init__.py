"""Test support shared by the tests (test/) and the benchmarks (bench/).

* link_emulator: link profiles (link_profiles.yaml) on a router spliced into a lab link
  (test/support/netlab.py ``Lab.wire``): delay, jitter, loss, blackouts, rates;
* delay_line: the userspace half of it, a child process on TUN devices;
* remote_session: an operator (aiortc viewer, /control, /video, a held key) whose sockets live
  in a lab namespace;
* cmd_vel: the one /cmd_vel recorder (every Twist or TwistStamped with its arrival time);
* waiting: ``wait_for``, polling a condition with a deadline (the tests' only synchronisation);
* pictures: small moving pictures as the hub receives them, for encoder and WebRTC tests;
* page_probes: JavaScript the tests and benchmarks run in the page (getStats of the video);
* soak_attacks: every hostile-client attack at once, each a bounded loop.

Import as ``support.link_emulator`` with test/ on sys.path (pytest puts it there for the tests;
bench/ scripts insert it).
"""
