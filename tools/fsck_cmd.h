/* fsck_cmd — `paxfs fsck`: the command-line side of fs/fsck.h. */
#ifndef PAXFS_TOOLS_FSCK_CMD_H
#define PAXFS_TOOLS_FSCK_CMD_H

/* argv[0] is "fsck". Returns the exit code: 0 clean, 1 findings, 2 bad
 * usage or unusable input. */
int fsck_main(int argc, char **argv);

#endif
