"""The FPC scheduler's protocol (OpenWhisk 2.0), as self-contained building blocks.

``keys``        etcd key names (EtcdKV.scala)
``messages``    the Kafka messages of container creation and deletion, and etcd's values
``etcd``        a small etcd v3 client seam over etcd3gw, with the invoker's own errors
``lease``       the invoker's lease: granted, kept alive, granted again after it is lost
``registry``    keys bound to that lease, written again under every new lease
``activation``  the scheduler's ``ActivationService`` (gRPC): fetch and reschedule

Nothing here knows the container pool; the FPC front end wires these to it.
"""
