"""Test doubles of paid model APIs, speaking their documented wire formats over real HTTP.

Only paid model services are faked (DESIGN §7); everything else in tests is a
real server. Import these from tests and benchmarks only, never from a service.
"""
