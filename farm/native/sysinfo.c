/* SYSTEM_INFO (docs/protocol.md §4.5) and the board's state, read where Linux exposes it, as
 * farm/board/machine.py reads it: anything the board does not expose is null. */
#define _GNU_SOURCE
#include "board.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

const char *machine_name(void) {
    static struct utsname names;
    if (!names.machine[0]) uname(&names);
    return names.machine;
}

/* `x86_64`, `aarch64`, `arm` ... for an ELF file (the names of farm/board/elf.py), NULL for anything else. */
const char *elf_machine(const char *path, char *out, size_t cap) {
    unsigned char header[20];
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    size_t n = fread(header, 1, sizeof header, file);
    fclose(file);
    if (n < 20 || memcmp(header, "\177ELF", 4) != 0) return NULL;
    unsigned machine = header[5] == 1 ? (unsigned)(header[18] | header[19] << 8) : (unsigned)(header[18] << 8 | header[19]);
    static const struct {
        unsigned number;
        const char *name;
    } names[] = {{3, "i386"}, {8, "mips"}, {20, "ppc"}, {21, "ppc64"}, {22, "s390x"}, {40, "arm"},
                 {62, "x86_64"}, {183, "aarch64"}, {258, "loongarch"}};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (names[k].number == machine) return snprintf(out, cap, "%s", names[k].name), out;
    if (machine == 243) snprintf(out, cap, "riscv%d", header[4] == 2 ? 64 : 32);
    else snprintf(out, cap, "machine %u", machine);
    return out;
}

static int read_number(const char *path, long long *out) {
    char text[64], *end;
    if (read_text_file(path, text, sizeof text) <= 0) return -1;
    *out = strtoll(text, &end, 0);
    return *end ? -1 : 0;
}

static void number_or_null(Buf *b, const char *path) {
    long long value;
    if (read_number(path, &value)) buf_adds(b, "null");
    else buf_addf(b, "%lld", value);
}

int current_cpu(void) {
    char stat[4096];
    if (read_text_file("/proc/self/stat", stat, sizeof stat) <= 0) return 0;
    char *p = strrchr(stat, ')');
    if (!p) return 0;
    p += 2;
    for (int field = 0; field < 36 && p; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    return p ? atoi(p) : 0;
}

long others_running(void) {
    char text[65536];
    if (read_text_file("/proc/stat", text, sizeof text) <= 0) return -1;
    char *line = strstr(text, "\nprocs_running ");
    if (!line) return -1;
    long running = atol(line + 15);
    return running > 1 ? running - 1 : 0;
}

static const char *emulator(char *out, size_t cap) {
    char status[4096];
    if (read_text_file("/proc/self/status", status, sizeof status) <= 0) return NULL;
    if (strncmp(status, "Name:", 5)) return NULL;
    const char *name = status + 5;
    while (*name == ' ' || *name == '\t') name++;
    size_t n = strcspn(name, "\n");
    if (strncmp(name, "qemu-", 5)) return NULL;
    snprintf(out, cap, "%.*s", (int)n, name);
    return out;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void temperatures(Buf *b) {
    buf_add(b, "{", 1);
    DIR *directory = opendir("/sys/class/thermal");
    char *zones[256];
    size_t count = 0;
    struct dirent *entry;
    while (directory && (entry = readdir(directory)) && count < 256)
        if (!strncmp(entry->d_name, "thermal_zone", 12)) zones[count++] = xstrdup(entry->d_name);
    if (directory) closedir(directory);
    qsort(zones, count, sizeof zones[0], by_name);
    static char seen[256][300];
    size_t written = 0;
    for (size_t k = 0; k < count; k++) {
        char path[512], kind[128];
        long long millidegrees;
        snprintf(path, sizeof path, "/sys/class/thermal/%s/temp", zones[k]);
        if (read_number(path, &millidegrees) == 0) {
            snprintf(path, sizeof path, "/sys/class/thermal/%s/type", zones[k]);
            if (read_text_file(path, kind, sizeof kind) <= 0) snprintf(kind, sizeof kind, "%s", zones[k]);
            int duplicate = 0;
            for (size_t j = 0; j < written; j++) duplicate |= !strcmp(seen[j], kind);
            char label[300];
            snprintf(label, sizeof label, duplicate ? "%s (%s)" : "%s", kind, zones[k]);
            snprintf(seen[written], sizeof seen[written], "%s", label);
            if (written++) buf_add(b, ",", 1);
            json_string(b, label, strlen(label));
            buf_add(b, ":", 1);
            json_double(b, (double)millidegrees / 1000.0);
        }
        free(zones[k]);
    }
    buf_add(b, "}", 1);
}

static void throttled(Buf *b, int cpu) {
    long long value;
    char path[128];
    if (read_number("/sys/devices/platform/soc/soc:firmware/get_throttled", &value) == 0) {
        buf_adds(b, value ? "true" : "false");
        return;
    }
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/thermal_throttle/core_throttle_count", cpu);
    if (read_number(path, &value) == 0) buf_adds(b, value > 0 ? "true" : "false");
    else buf_adds(b, "null");
}

void machine_state(Buf *b, int cpu, long others) {
    char text[128], path[160];
    if (cpu < 0) cpu = current_cpu();
    buf_adds(b, "{\"machine\":");
    json_string(b, machine_name(), strlen(machine_name()));
    buf_adds(b, ",\"emulator\":");
    if (emulator(text, sizeof text)) json_string(b, text, strlen(text));
    else buf_adds(b, "null");
    buf_addf(b, ",\"cpu\":%d,\"cpu_count\":%ld,\"governor\":", cpu, sysconf(_SC_NPROCESSORS_ONLN));
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor", cpu);
    if (read_text_file(path, text, sizeof text) >= 0) json_string(b, text, strlen(text));
    else buf_adds(b, "null");
    static const char *const FREQUENCIES[][2] = {
        {"current_khz", "scaling_cur_freq"}, {"min_khz", "scaling_min_freq"}, {"max_khz", "scaling_max_freq"}};
    for (int k = 0; k < 3; k++) {
        buf_addf(b, ",\"%s\":", FREQUENCIES[k][0]);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/cpufreq/%s", cpu, FREQUENCIES[k][1]);
        number_or_null(b, path);
    }
    buf_adds(b, ",\"temperatures_c\":");
    temperatures(b);
    buf_adds(b, ",\"throttled\":");
    throttled(b, cpu);
    buf_adds(b, ",\"load_average\":");
    double averages[3];
    if (read_text_file("/proc/loadavg", text, sizeof text) > 0 &&
        sscanf(text, "%lf %lf %lf", &averages[0], &averages[1], &averages[2]) == 3) {
        buf_add(b, "[", 1);
        for (int k = 0; k < 3; k++) {
            if (k) buf_add(b, ",", 1);
            json_double(b, averages[k]);
        }
        buf_add(b, "]", 1);
    } else {
        buf_adds(b, "null");
    }
    if (others < -1) others = others_running();
    if (others < 0) buf_adds(b, ",\"other_processes_running\":null}");
    else buf_addf(b, ",\"other_processes_running\":%ld}", others);
}

int op_system_info(Session *s, Reply *r) {
    struct utsname names;
    uname(&names);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    Buf *b = &r->meta;
    buf_adds(b, "{\"machine\":");
    json_string(b, names.machine, strlen(names.machine));
    buf_adds(b, ",\"os\":");
    json_string(b, names.sysname, strlen(names.sysname));
    buf_adds(b, ",\"os_release\":");
    json_string(b, names.release, strlen(names.release));
    buf_adds(b, ",\"python\":null,\"python_implementation\":null,\"server\":\"native\",\"hostname\":");
    json_string(b, host, strlen(host));
    buf_adds(b, ",\"key\":");
    json_string(b, s->order->key, strlen(s->order->key));
    buf_adds(b, ",\"name\":");
    json_string(b, s->order->name, strlen(s->order->name));
    unsigned one = 1;
    buf_addf(b, ",\"server_version\":\"%s\",\"byteorder\":\"%s\",\"cpu_count\":%ld,\"session_dir\":", FARM_VERSION,
             *(unsigned char *)&one ? "little" : "big", sysconf(_SC_NPROCESSORS_ONLN));
    json_string(b, s->root, strlen(s->root));
    buf_addf(b, ",\"pid\":%d,\"c_type_sizes\":{\"short\":%zu,\"unsigned short\":%zu,\"int\":%zu,\"signed\":%zu,"
             "\"unsigned\":%zu,\"unsigned int\":%zu,\"long\":%zu,\"unsigned long\":%zu,\"long long\":%zu,"
             "\"unsigned long long\":%zu,\"size_t\":%zu,\"ssize_t\":%zu,\"intptr_t\":%zu,\"uintptr_t\":%zu,"
             "\"ptrdiff_t\":%zu},\"live_arrays\":%zu,\"state\":",
             (int)getpid(), sizeof(short), sizeof(unsigned short), sizeof(int), sizeof(signed), sizeof(unsigned),
             sizeof(unsigned int), sizeof(long), sizeof(unsigned long), sizeof(long long), sizeof(unsigned long long),
             sizeof(size_t), sizeof(ssize_t), sizeof(intptr_t), sizeof(uintptr_t), sizeof(ptrdiff_t), s->live_arrays);
    machine_state(b, -1, -2);
    buf_add(b, "}", 1);
    return b->failed ? fail(s, "MemoryError", "no memory for the board's description") : 0;
}
