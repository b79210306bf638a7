"""The wire: what rtnf, the feedback screen and other clients share.

The messages of every topic and their codec, the subscription that receives
them, the bounded publisher, CURVE keys and the display settings the screen
reads. This package imports nothing else of rtnf, so a client (the screen, a
lab's own tool) needs only ``rtnf.wire`` and pyzmq/pydantic.
"""
