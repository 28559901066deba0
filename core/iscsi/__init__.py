"""iSCSI target backends behind one protocol (see base.py): LIO via rtslib-fb, tgtd via tgtadm."""
