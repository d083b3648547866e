"""netcheck's guest agent: the agent for guest VMs, on Python 3.6 and later, stdlib only.

The appliance agent (``netcheck.agent``) needs Python 3.11; the guests HDM migrates ship
3.6 (RHEL 8's platform-python, RHEL/CentOS/Oracle Linux 7.7+, SLES 15, Ubuntu 18.04) or
newer. This subpackage is what runs there, as one file (``netcheck-guest.pyz``, built by
deploy/zipapp/build.py --guest): stand-in listeners on the guest's inbound ports, TCP
connect probes of its outbound checks, the guest's facts (OS, boot mode, VMware tools,
iSCSI, grub, free space, network), enrolment and mutual TLS with the controller. It speaks
the wire contract of :mod:`netcheck.agent.wire` (the controller takes its payloads as they
are) without importing it: wire.py uses 3.10+ syntax.

Every module here stays valid on Python 3.6: no dataclasses, no ``from __future__ import
annotations``, no walrus, no ``list[int]`` at run time; hints from :mod:`typing`.
tests/test_guest_vermin.py runs ``vermin -t=3.6- --violations`` over these files.
"""

MIN_PYTHON = (3, 6)
