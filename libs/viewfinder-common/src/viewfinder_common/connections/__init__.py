"""Named connections to model services and vector databases (issue 7, DESIGN §4).

``models`` says which kinds exist and which settings each takes (pure);
``secrets`` encrypts secrets at rest or resolves references to them;
``store`` keeps connections in the catalogue's PostgreSQL; ``probe`` makes
the live round-trip of ``TestConnection``; ``service`` is the gRPC servicer.
Secrets leave this package only towards the remote service they unlock.
"""
