/* paxfs-mount-dev — `paxfs mount` alone, for the mount tests until the paxfs
 * command dispatches to mnt_main (tests/test_mount.sh prefers $PAXFS_BIN). */
#include "fs/mount.h"

int main(int argc, char **argv)
{
    return mnt_main(argc - 1, argv + 1);
}
