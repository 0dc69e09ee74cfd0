"""Step periods of canary releases, from a watch of VirtualServices.

stdin: lines "<epoch seconds> <namespace>/<name> <weight> <weight>..." (one per watch
event); argv[1]: the epoch second the images were bumped. Prints the p50/p99/max of the
time between two successive weight changes of one VirtualService (the ideal is the
analysis interval), as "p50/p99/max".
"""
import sys


def main():
    bump = float(sys.argv[1])
    last = {}
    changes = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) < 2:
            continue
        t, name, weights = float(parts[0]), parts[1], tuple(parts[2:])
        if t < bump or last.get(name) == weights:
            continue
        if name in last:
            changes.setdefault(name, []).append(t)
        last[name] = weights
    periods = sorted(b - a for ts in changes.values() for a, b in zip(ts, ts[1:]))
    if not periods:
        print("none")
        return

    def pct(p):
        return periods[min(len(periods) - 1, int(p * len(periods)))]

    print(f"{pct(0.5):.1f}/{pct(0.99):.1f}/{periods[-1]:.1f}")


if __name__ == "__main__":
    main()
