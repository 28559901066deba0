"""iSCSI target backends behind one protocol (base.py) and one diff (diff.py): LIO via configfs and
rtslib-fb (lio.py), tgtd via its management socket (tgt.py, tgtd_socket.py)."""
