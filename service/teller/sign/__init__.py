"""The Sign path in two layers: ``plan`` decides a batch of calls without I/O
(claim, policy, sign, reserve, audit), ``service`` prepares the calls, runs the
plan in one transaction through a driver (``drivers``) and finishes each call.
``call`` holds the types a call carries across them; ``batch_io`` the requests
a plan makes and a driver answers."""
