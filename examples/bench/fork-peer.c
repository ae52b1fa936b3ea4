// The bench's peer: fork() used as a snapshot, doing the same writes as a
// memfork case of the matrix (examples/bench/matrix-case.ts), and the copy
// floor those writes imply. Built by examples/bench.ts with the system's C
// compiler; a plain single-threaded C process, so fork() is sound here.
//
//   fork-peer SIZE PATTERN MODE ROUNDS SEED RESERVE [DROP]
//
// SIZE bytes of anonymous memory are mapped and every byte written (as a
// memfork segment is after its first fill). Each round writes the pattern's
// pages (one byte each, the same pages as pattern.ts picks from SEED) and
// fork()s a child: MODE letgo: the child exits at once and is reaped before
// the next round; kept: the child pause()s; read: the child reads one byte of
// every page, tells the parent, then pause()s. A round is not started while
// MemAvailable is below RESERVE bytes plus twice what the round writes.
// DROP 0 skips measuring what dropping a page costs (-1 in the output).
// One JSON object goes to stdout. Children die with the peer
// (PR_SET_PDEATHSIG) and are killed at the end.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

static uint32_t rng_state;
static uint32_t rng_next(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  rng_state = x;
  return x;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// Mirrors pagesPerRound() in pattern.ts.
static size_t pages_per_round(const char *id, size_t pages) {
  size_t one = pages / 100 > 0 ? pages / 100 : 1;
  if (!strcmp(id, "stride2")) return (pages + 1) / 2;
  if (!strcmp(id, "stride3")) return (pages + 2) / 3;
  if (!strcmp(id, "stride8")) return (pages + 7) / 8;
  if (!strcmp(id, "random1") || !strcmp(id, "run1")) return one;
  if (!strcmp(id, "random10")) return pages / 10 > 0 ? pages / 10 : 1;
  if (!strcmp(id, "random30")) return pages * 3 / 10 > 0 ? pages * 3 / 10 : 1;
  return 0;
}

// Mirrors pickPages() in pattern.ts.
static size_t pick_pages(const char *id, size_t pages, uint32_t *out, unsigned char *mark) {
  size_t n = pages_per_round(id, pages), c = 0;
  if (!strncmp(id, "stride", 6)) {
    size_t k = (size_t)atoi(id + 6);
    for (size_t p = 0; p < pages; p += k) out[c++] = (uint32_t)p;
    return c;
  }
  if (!strcmp(id, "run1")) {
    uint32_t first = rng_next() % (uint32_t)(pages - n + 1);
    for (size_t i = 0; i < n; i++) out[i] = first + (uint32_t)i;
    return n;
  }
  while (c < n) {
    uint32_t p = rng_next() % (uint32_t)pages;
    if (!mark[p]) {
      mark[p] = 1;
      out[c++] = p;
    }
  }
  for (size_t i = 0; i < c; i++) mark[out[i]] = 0;
  return c;
}

// A field of /proc/meminfo (or another "Key: N kB" file), in bytes; -1 where absent.
static long long kb_field(const char *file, const char *key) {
  FILE *f = fopen(file, "r");
  if (!f) return -1;
  char line[256];
  size_t len = strlen(key);
  long long v = -1;
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, key, len) && line[len] == ':') {
      v = atoll(line + len + 1) * 1024;
      break;
    }
  }
  fclose(f);
  return v;
}

static long long machine_memory(void) {
  long long a = kb_field("/proc/meminfo", "Shmem"), b = kb_field("/proc/meminfo", "AnonPages");
  return a < 0 || b < 0 ? -1 : a + b;
}

static void print_list(const char *name, const double *v, int n) {
  printf("\"%s\":[", name);
  for (int i = 0; i < n; i++) printf("%s%.4f", i ? "," : "", v[i]);
  printf("]");
}

int main(int argc, char **argv) {
  if (argc != 7 && argc != 8) {
    fprintf(stderr, "usage: fork-peer SIZE PATTERN MODE ROUNDS SEED RESERVE [DROP]\n");
    return 2;
  }
  size_t size = strtoull(argv[1], NULL, 10);
  const char *pattern = argv[2], *mode = argv[3];
  int rounds = atoi(argv[4]);
  uint32_t seed = (uint32_t)strtoul(argv[5], NULL, 10);
  long long reserve = atoll(argv[6]);
  int measure_drop = argc == 8 ? atoi(argv[7]) : 1;
  size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = size / page;
  int letgo = !strcmp(mode, "letgo"), readall = !strcmp(mode, "read");
  if (pages == 0 || rounds <= 0 || pages_per_round(pattern, pages) == 0 || (!letgo && !readall && strcmp(mode, "kept"))) {
    fprintf(stderr, "fork-peer: bad arguments\n");
    return 2;
  }
  unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint32_t *list = malloc(pages * sizeof *list);
  unsigned char *mark = calloc(pages, 1);
  pid_t *kids = calloc((size_t)rounds, sizeof *kids);
  double *fork_ms = calloc((size_t)rounds, sizeof(double)), *write_ms = calloc((size_t)rounds, sizeof(double));
  double *read_ms = calloc((size_t)rounds, sizeof(double));
  if (mem == MAP_FAILED || !list || !mark || !kids || !fork_ms || !write_ms || !read_ms) {
    printf("{\"outcome\":\"error\",\"error\":\"cannot allocate %zu bytes: %s\"}\n", size, strerror(errno));
    return 0;
  }
  memset(mem, 1, size);  // touched fully, as a filled memfork segment

  // The drop: MADV_DONTNEED on written pages that are not neighbours (every
  // other page), one madvise() a page, and (where the kernel takes it for the
  // calling process) batched 1,024 pages a call through process_madvise().
  // Best of 3 each.
  double drop_us = -1, batch_us = -1;
  if (measure_drop) {
    size_t n = 4096;
    unsigned char *s = mmap(NULL, n * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s != MAP_FAILED) {
      for (int rep = 0; rep < 3; rep++) {
        memset(s, 2, n * page);
        double t = now_ms();
        for (size_t i = 0; i < n; i += 2) madvise(s + i * page, page, MADV_DONTNEED);
        double us = (now_ms() - t) * 1000 / (n / 2);
        if (drop_us < 0 || us < drop_us) drop_us = us;
      }
#if defined(__linux__) && defined(SYS_pidfd_open) && defined(SYS_process_madvise)
      int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
      static struct iovec iov[1024];
      for (int rep = 0; pidfd >= 0 && rep < 3; rep++) {
        memset(s, 2, n * page);
        int ok = 1;
        double t = now_ms();
        for (size_t i = 0; ok && i < n; i += 2 * 1024) {
          size_t k = 0;
          for (size_t j = i; j < n && k < 1024; j += 2) iov[k++] = (struct iovec){s + j * page, page};
          ok = syscall(SYS_process_madvise, pidfd, iov, k, MADV_DONTNEED, 0) == (long)(k * page);
        }
        double us = (now_ms() - t) * 1000 / (n / 2);
        if (!ok) break;
        if (batch_us < 0 || us < batch_us) batch_us = us;
      }
      if (pidfd >= 0) close(pidfd);
#endif
      munmap(s, n * page);
    }
  }
  // The copy: round 1's pages, each run of consecutive pages one memcpy, out
  // of this touched memory into touched memory (at most 64 Ki pages, reused
  // from the start when the round writes more; best of 3).
  double copy_ms = -1;
  size_t copied = 0, runs = 0;
  {
    rng_state = seed;
    size_t n = pick_pages(pattern, pages, list, mark);
    size_t cap = n < 65536 ? n : 65536;
    unsigned char *d = mmap(NULL, cap * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (d != MAP_FAILED) {
      memset(d, 3, cap * page);
      for (int rep = 0; rep < 3; rep++) {
        size_t at = 0;
        runs = 0;
        double t = now_ms();
        for (size_t i = 0; i < n;) {
          size_t j = i + 1;
          while (j < n && list[j] == list[j - 1] + 1 && j - i < cap) j++;
          size_t len = j - i;
          if (at + len > cap) at = 0;
          memcpy(d + at * page, mem + (size_t)list[i] * page, len * page);
          at += len;
          runs++;
          i = j;
        }
        double ms = now_ms() - t;
        if (copy_ms < 0 || ms < copy_ms) copy_ms = ms;
      }
      copied = n;
      munmap(d, cap * page);
    }
  }
  // The same pages copied into new memory, as a kept snapshot's copies must
  // be (fork() pays it at the writes after it, memfork at the clone): with
  // pwritev(2), a run of consecutive pages an iovec, into a new memory file
  // (the cheapest way measured here: new anonymous memory by memcpy costs
  // more, through its page faults); elsewhere into new anonymous memory by
  // memcpy. At most 64 Ki pages, new memory each of 3 times (best),
  // scaled to the round's pages.
  double new_copy_ms = -1;
  {
    rng_state = seed;
    size_t n = pick_pages(pattern, pages, list, mark);
    size_t cap = n < 65536 ? n : 65536;
    for (int rep = 0; cap > 0 && rep < 3; rep++) {
      double ms = -1;
#ifdef __linux__
      int fd = memfd_create("fork-peer-floor", 0);
      if (fd < 0 || ftruncate(fd, (off_t)(cap * page)) != 0) {
        if (fd >= 0) close(fd);
        break;
      }
      static struct iovec iov[1024];
      off_t off = 0;
      int ok = 1;
      double t = now_ms();
      for (size_t i = 0; ok && i < cap;) {
        int k = 0;
        size_t bytes = 0;
        while (k < 1024 && i < cap) {
          size_t j = i + 1;
          while (j < cap && list[j] == list[j - 1] + 1) j++;
          iov[k++] = (struct iovec){mem + (size_t)list[i] * page, (j - i) * page};
          bytes += (j - i) * page;
          i = j;
        }
        ok = pwritev(fd, iov, k, off) == (ssize_t)bytes;
        off += (off_t)bytes;
      }
      ms = now_ms() - t;
      close(fd);
      if (!ok) break;
#else
      unsigned char *d = mmap(NULL, cap * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (d == MAP_FAILED) break;
      double t = now_ms();
      for (size_t i = 0; i < cap; i++) memcpy(d + i * page, mem + (size_t)list[i] * page, page);
      ms = now_ms() - t;
      munmap(d, cap * page);
#endif
      ms = ms * (double)n / (double)cap;
      if (new_copy_ms < 0 || ms < new_copy_ms) new_copy_ms = ms;
    }
  }

  rng_state = seed;
  uint32_t checksum = 0;
  const char *outcome = "ok";
  char error[256] = "";
  int done = 0, kept = 0;
  long long before = machine_memory(), tables_before = kb_field("/proc/meminfo", "PageTables");
  long long pss_before = kb_field("/proc/self/smaps_rollup", "Pss_Anon");
  pid_t parent = getpid();
  for (int r = 0; r < rounds; r++) {
    long long avail = kb_field("/proc/meminfo", "MemAvailable");
    long long need = reserve + 2LL * (long long)pages_per_round(pattern, pages) * (long long)page;
    if (avail >= 0 && avail < need) {
      outcome = "stopped";
      snprintf(error, sizeof error, "stopped before round %d: MemAvailable %lld MiB, below %lld MiB", r + 1, avail >> 20, need >> 20);
      break;
    }
    size_t n = pick_pages(pattern, pages, list, mark);
    for (size_t i = 0; i < n; i++) checksum = checksum * 31 + list[i];
    unsigned char value = (unsigned char)(r % 250 + 2);
    double t0 = now_ms();
    for (size_t i = 0; i < n; i++) mem[(size_t)list[i] * page] = value;
    double t1 = now_ms();
    int ready[2] = {-1, -1};
    if (readall && pipe(ready) != 0) {
      outcome = "error";
      snprintf(error, sizeof error, "pipe %s at round %d", strerror(errno), r + 1);
      break;
    }
    double t2 = now_ms();
    pid_t pid = fork();
    double t3 = now_ms();
    if (pid < 0) {
      outcome = "error";
      snprintf(error, sizeof error, "fork %s at round %d", strerror(errno), r + 1);
      break;
    }
    if (pid == 0) {
      if (letgo) _exit(0);
#ifdef __linux__
      prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
      if (getppid() != parent) _exit(0);
      close(1);
      if (readall) {
        volatile unsigned sum = 0;
        for (size_t p = 0; p < pages; p++) sum += mem[p * page];
        char c = (char)sum;
        if (write(ready[1], &c, 1) < 0) _exit(1);
      }
      for (;;) pause();
    }
    write_ms[r] = t1 - t0;
    fork_ms[r] = t3 - t2;
    done = r + 1;
    if (letgo) {
      waitpid(pid, NULL, 0);
    } else {
      kids[kept++] = pid;
      if (readall) {
        char c;
        double t4 = now_ms();
        close(ready[1]);
        ssize_t got = read(ready[0], &c, 1);
        read_ms[r] = now_ms() - t4;
        close(ready[0]);
        if (got != 1) {
          outcome = "error";
          snprintf(error, sizeof error, "the reading child of round %d did not answer", r + 1);
          break;
        }
      }
    }
  }
  long long after = machine_memory(), tables_after = kb_field("/proc/meminfo", "PageTables");
  // Pss summed over the peer and its children counts every page once, whoever shares it.
  long long kids_dirty = 0, self_dirty, pss_after = kb_field("/proc/self/smaps_rollup", "Pss_Anon");
  char file[64];
  for (int i = 0; i < kept; i++) {
    snprintf(file, sizeof file, "/proc/%d/smaps_rollup", (int)kids[i]);
    long long v = kb_field(file, "Private_Dirty"), pss = kb_field(file, "Pss_Anon");
    kids_dirty = v < 0 || kids_dirty < 0 ? -1 : kids_dirty + v;
    pss_after = pss < 0 || pss_after < 0 ? -1 : pss_after + pss;
  }
  self_dirty = kb_field("/proc/self/smaps_rollup", "Private_Dirty");
  for (int i = 0; i < kept; i++) kill(kids[i], SIGKILL);
  for (int i = 0; i < kept; i++) waitpid(kids[i], NULL, 0);

  printf("{\"outcome\":\"%s\",\"error\":\"%s\",\"pattern\":\"%s\",\"mode\":\"%s\",\"size\":%zu,\"pageSize\":%zu,", outcome, error, pattern, mode,
         size, page);
  printf("\"rounds\":%d,\"roundsDone\":%d,\"pagesPerRound\":%zu,\"checksum\":%u,", rounds, done, pages_per_round(pattern, pages), checksum);
  print_list("forkMs", fork_ms, done);
  printf(",");
  print_list("writeMs", write_ms, done);
  printf(",");
  print_list("readMs", read_ms, readall ? done : 0);
  printf(",\"machineBefore\":%lld,\"machineAfter\":%lld,\"pageTablesBefore\":%lld,\"pageTablesAfter\":%lld,", before, after, tables_before,
         tables_after);
  printf("\"pssBefore\":%lld,\"pssAfter\":%lld,", pss_before, pss_after);
  printf("\"childrenPrivateDirty\":%lld,\"selfPrivateDirty\":%lld,\"children\":%d,", kids_dirty, self_dirty, kept);
  printf("\"floor\":{\"copyMs\":%.4f,\"newCopyMs\":%.4f,\"pages\":%zu,\"runs\":%zu,\"dropMicrosPerPage\":%.4f,\"batchedDropMicrosPerPage\":%.4f}}\n", copy_ms,
         new_copy_ms, copied, runs, drop_us, batch_us);
  return 0;
}
