"""The pure billing core: money, periods, pricing, proration and the subscription lifecycle.

Nothing in this package touches Flask, the database or the network, so every rule here can be
tested directly and reused by services, jobs and views alike.
"""
