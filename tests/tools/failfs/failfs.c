/*
 * failfs: a FUSE file system showing one file (default name disk.img) that passes reads and writes through to a
 * backing file, mounted with the kernel's writeback cache, so a write() lands in the page cache and reaches this
 * daemon only when the kernel writes the page back (fdatasync, RWF_DSYNC, or the flusher threads). On command it
 * fails those writebacks with EIO over a chosen byte range, which is how a test gets a real writeback error that
 * Linux records in the file's error sequence and reports to fsync/fdatasync.
 *
 * Control file MOUNTPOINT/.failfs, one command per write():
 *   fail OFFSET LENGTH         every write overlapping [OFFSET, OFFSET+LENGTH) fails with EIO
 *   fail OFFSET LENGTH hold    same, but each such write waits inside the daemon until "release" first, so
 *                              whatever waits for that writeback (an fdatasync) stays in the kernel meanwhile
 *   release                    let the held writes return (with EIO)
 *   clear                      stop failing (and release held writes)
 * Reading it returns key=value lines: armed, fail_offset, fail_length, held, failed_writes, writes, fsyncs.
 *
 * usage: failfs BASEFILE MOUNTPOINT [-f] [-o name=NAME] [FUSE options]
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <fuse.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CTL "/.failfs"

static struct {
	const char *base;
	char *name;
	int fd;
	off_t size;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int armed, hold;
	uint64_t off, len;
	uint64_t release_gen;
	uint64_t held, failed, writes, fsyncs;
} G = { .fd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static int is_disk(const char *p) { return p[0] == '/' && strcmp(p + 1, G.name) == 0; }
static int is_ctl(const char *p) { return strcmp(p, CTL) == 0; }

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	if (!(conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
		fprintf(stderr, "failfs: the kernel offers no FUSE writeback cache; writeback errors cannot be made\n");
		exit(1);
	}
	conn->want |= FUSE_CAP_WRITEBACK_CACHE;
	cfg->kernel_cache = 1;     /* keep cached pages across opens: the page cache is the point */
	cfg->attr_timeout = 3600;  /* the size never changes behind the kernel's back */
	cfg->entry_timeout = 3600;
	return NULL;
}

static int ctl_text(char *buf, size_t cap)
{
	pthread_mutex_lock(&G.mu);
	int n = snprintf(buf, cap,
		"armed=%d\nhold=%d\nfail_offset=%" PRIu64 "\nfail_length=%" PRIu64 "\nheld=%" PRIu64
		"\nfailed_writes=%" PRIu64 "\nwrites=%" PRIu64 "\nfsyncs=%" PRIu64 "\n",
		G.armed, G.hold, G.off, G.len, G.held, G.failed, G.writes, G.fsyncs);
	pthread_mutex_unlock(&G.mu);
	return n;
}

static int ff_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof *st);
	st->st_uid = getuid(); st->st_gid = getgid();
	if (strcmp(path, "/") == 0) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; return 0; }
	if (is_disk(path)) { st->st_mode = S_IFREG | 0644; st->st_nlink = 1; st->st_size = G.size; st->st_blocks = G.size / 512; return 0; }
	if (is_ctl(path)) { st->st_mode = S_IFREG | 0644; st->st_nlink = 1; st->st_size = 4096; return 0; }
	return -ENOENT;
}

static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags fl)
{
	(void)off, (void)fi, (void)fl;
	if (strcmp(path, "/") != 0) return -ENOENT;
	fill(buf, ".", NULL, 0, 0); fill(buf, "..", NULL, 0, 0);
	fill(buf, G.name, NULL, 0, 0); fill(buf, CTL + 1, NULL, 0, 0);
	return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi)
{
	if (is_ctl(path)) { fi->direct_io = 1; return 0; }  /* commands and stats bypass the page cache */
	if (!is_disk(path)) return -ENOENT;
	if (fi->flags & O_TRUNC) return -EPERM;
	return 0;
}

static int ff_read(const char *path, char *buf, size_t n, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (is_ctl(path)) {
		char t[512];
		int len = ctl_text(t, sizeof t);
		if (off >= len) return 0;
		if ((size_t)(len - off) < n) n = len - off;
		memcpy(buf, t + off, n);
		return (int)n;
	}
	if (!is_disk(path)) return -ENOENT;
	size_t done = 0;
	while (done < n) {
		ssize_t r = pread(G.fd, buf + done, n - done, off + done);
		if (r < 0) return -errno;
		if (r == 0) break;
		done += r;
	}
	return (int)done;
}

static int ctl_command(const char *buf, size_t n)
{
	char cmd[256];
	if (n >= sizeof cmd) return -EINVAL;
	memcpy(cmd, buf, n); cmd[n] = 0;
	uint64_t o, l; char word[16] = "";
	int rc = 0;
	pthread_mutex_lock(&G.mu);
	int k = sscanf(cmd, "fail %" SCNu64 " %" SCNu64 " %15s", &o, &l, word);
	if (k >= 2 && l > 0 && (k == 2 || strcmp(word, "hold") == 0)) {
		G.armed = 1; G.off = o; G.len = l; G.hold = (k == 3);
	} else if (strncmp(cmd, "release", 7) == 0) {
		G.release_gen++; pthread_cond_broadcast(&G.cv);
	} else if (strncmp(cmd, "clear", 5) == 0) {
		G.armed = 0; G.hold = 0; G.release_gen++; pthread_cond_broadcast(&G.cv);
	} else {
		rc = -EINVAL;
	}
	pthread_mutex_unlock(&G.mu);
	if (rc) fprintf(stderr, "failfs: bad control command: %s\n", cmd);
	return rc ? rc : (int)n;
}

static int ff_write(const char *path, const char *buf, size_t n, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (is_ctl(path)) return ctl_command(buf, n);
	if (!is_disk(path)) return -ENOENT;
	if (off >= G.size) return -ENOSPC;
	if ((uint64_t)off + n > (uint64_t)G.size) n = G.size - off;
	pthread_mutex_lock(&G.mu);
	G.writes++;
	if (G.armed && (uint64_t)off < G.off + G.len && G.off < (uint64_t)off + n) {
		if (G.hold) {
			uint64_t gen = G.release_gen;
			G.held++;
			while (gen == G.release_gen) pthread_cond_wait(&G.cv, &G.mu);
			G.held--;
		}
		G.failed++;
		pthread_mutex_unlock(&G.mu);
		fprintf(stderr, "failfs: failing write of %zu bytes at %jd with EIO\n", n, (intmax_t)off);
		return -EIO;
	}
	pthread_mutex_unlock(&G.mu);
	size_t done = 0;
	while (done < n) {
		ssize_t w = pwrite(G.fd, buf + done, n - done, off + done);
		if (w < 0) return -errno;
		done += w;
	}
	return (int)n;
}

static int ff_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)datasync, (void)fi;
	if (!is_disk(path)) return 0;
	pthread_mutex_lock(&G.mu); G.fsyncs++; pthread_mutex_unlock(&G.mu);
	return fdatasync(G.fd) < 0 ? -errno : 0;
}

static int ff_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	(void)fi;
	if (is_ctl(path)) return 0;
	if (!is_disk(path)) return -ENOENT;
	return size == G.size ? 0 : -EPERM;  /* a disk has a fixed size */
}

static int ff_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	(void)fi;
	if (!is_disk(path)) return -ENOENT;
	if (off + len > G.size) return -EFBIG;
	return fallocate(G.fd, mode, off, len) < 0 ? -errno : 0;
}

static int ff_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	(void)path, (void)tv, (void)fi;
	return 0;
}

static const struct fuse_operations ops = {
	.init = ff_init, .getattr = ff_getattr, .readdir = ff_readdir, .open = ff_open, .read = ff_read,
	.write = ff_write, .fsync = ff_fsync, .truncate = ff_truncate, .fallocate = ff_fallocate,
	.utimens = ff_utimens,
};

static const struct fuse_opt optspec[] = {
	{ "name=%s", 0, 0 },
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	(void)data, (void)out;
	if (key == FUSE_OPT_KEY_NONOPT && !G.base) { G.base = arg; return 0; }
	return 1;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	char *name = NULL;
	if (fuse_opt_parse(&args, &name, optspec, opt_proc) < 0) return 2;
	if (!G.base) {
		fprintf(stderr, "usage: %s BASEFILE MOUNTPOINT [-f] [-o name=disk.img] [FUSE options]\n", argv[0]);
		return 2;
	}
	G.name = name ? name : "disk.img";
	char *abs = realpath(G.base, NULL);
	if (!abs || (G.fd = open(abs, O_RDWR | O_CLOEXEC)) < 0) {
		fprintf(stderr, "failfs: cannot open %s: %s\n", G.base, strerror(errno));
		return 1;
	}
	struct stat st;
	if (fstat(G.fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
		fprintf(stderr, "failfs: %s must be a non-empty regular file\n", abs);
		return 1;
	}
	G.size = st.st_size;
	fuse_opt_add_arg(&args, "-ofsname=failfs,subtype=failfs,max_threads=32");
	int rc = fuse_main(args.argc, args.argv, &ops, NULL);
	fuse_opt_free_args(&args);
	return rc;
}
