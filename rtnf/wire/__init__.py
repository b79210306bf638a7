"""The wire: what rtnf, the feedback screen and other clients share.

The typed messages of every topic (:mod:`rtnf.wire.topics`, the one
definition of the contract, and their JSON Schema: :mod:`rtnf.wire.schema`),
the codec (:mod:`rtnf.wire.messages`), the subscription that receives them,
the bounded publisher, CURVE keys and the display settings the screen reads.
This package imports nothing else of rtnf, so a client (the screen, a lab's
own tool) needs only ``rtnf.wire`` and pyzmq/pydantic.
"""
