/* mount — `paxfs mount`: the replicated filesystem as a FUSE mount.
 *
 * The libfuse low-level adapter between the kernel and this node's replica:
 * reads are served from the local state machine (fs/fsm.h) after the read
 * barrier that the consistency mode asks for; every mutation becomes one op
 * record, proposed through the replica (consensus/replica.h) and answered
 * with the result computed when it was applied. What stays local to this
 * host and never enters the replicated state: the kernel's lookup counts
 * (forget is a no-op), the open handles per inode (they decide which
 * orphans this node still holds), and the invalidation queue that tells the
 * kernel about changes applied on behalf of other hosts.
 *
 * Command line (DESIGN.md, Command line contract):
 *
 *   paxfs mount --config DIR/cluster.conf --node K --data DATADIR [-f]
 *               [-o OPT,...] MOUNTPOINT
 *
 * Data directory layout: DATADIR/CLUSTER and DATADIR/wal/ (net/host.h),
 * DATADIR/store/ (fs/store.h), DATADIR/mount.log (the daemon's log when not
 * in the foreground).
 *
 * Exit codes: 0 clean unmount, 1 the mount failed after it was up,
 * 2 bad usage or bad input (one line on stderr, nothing touched). */
#ifndef PAXFS_FS_MOUNT_H
#define PAXFS_FS_MOUNT_H

/* The whole `paxfs mount ...` command; argv[0] is "mount". Without -f it
 * daemonizes and returns (in the parent) only once the mount is up or has
 * failed. Returns the process exit code. */
int mnt_main(int argc, char **argv);

#endif
