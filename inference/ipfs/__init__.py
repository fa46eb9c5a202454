"""IPFS for untrusted adapter bytes: UnixFS import with Kubo-identical CIDs (unixfs, dagpb, cid), a verifying
block store, CARv1, a trustless gateway server, and a fetcher that checks every block against its CID.
See docs/ipfs.md."""
