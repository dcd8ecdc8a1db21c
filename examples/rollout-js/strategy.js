// A Rollway rollout strategy in JavaScript: "steps".
//
// Fixed steps of devices (counts, not shares: `[5, 50]` sends 5 devices,
// then 50, then everyone left), each released once every device of the
// step before finished. A step in which more than `pause_on_failure_percent`
// of the devices failed pauses the job for an operator to look, rather
// than aborting it.
//
// Configuration (JSON), every field optional:
//   {"steps": [5, 50], "pause_on_failure_percent": 10}
//
// Build: see README.md. Everything arrives in the call: keep no state
// between calls and read no clock (the snapshot's `now` is the time).

const DEFAULTS = { steps: [5, 50], pause_on_failure_percent: 10 };

// A refusal: the `err` of the function's `result`, its text shown to the
// operator.
function refuse(why) {
  throw why;
}

function load(config) {
  let given = {};
  if (config.trim() !== "") {
    try {
      given = JSON.parse(config);
    } catch (error) {
      refuse(`the configuration is not JSON: ${error.message}`);
    }
  }
  if (given === null || typeof given !== "object" || Array.isArray(given)) {
    refuse("the configuration must be a JSON object");
  }
  const unknown = Object.keys(given).filter((k) => !(k in DEFAULTS));
  if (unknown.length > 0) {
    refuse(`unknown field(s): ${unknown.join(", ")}; known: ${Object.keys(DEFAULTS).join(", ")}`);
  }
  const c = { ...DEFAULTS, ...given };
  if (!Array.isArray(c.steps) || c.steps.length > 50 || !c.steps.every((n) => Number.isInteger(n) && n >= 1)) {
    refuse("'steps' must be a list of at most 50 device counts, each at least 1");
  }
  const percent = c.pause_on_failure_percent;
  if (typeof percent !== "number" || percent < 0 || percent > 100) {
    refuse("'pause_on_failure_percent' must be a number from 0 to 100");
  }
  return c;
}

const finished = (b) => b.succeeded + b.failed + b.timedOut + b.cancelled;

export const rollout = {
  info() {
    return {
      name: "rollout-steps",
      version: "0.1.0",
      description: "Fixed steps of devices, pausing on failures (JavaScript)",
    };
  },

  validateConfig(config) {
    load(config);
  },

  plan(config, total) {
    const c = load(config);
    const sizes = [];
    let left = total;
    for (const step of c.steps) {
      if (left === 0) break;
      const size = Math.min(step, left);
      sizes.push(size);
      left -= size;
    }
    if (left > 0) sizes.push(left);
    return sizes;
  },

  evaluate(config, snapshot) {
    const c = load(config);
    const started = snapshot.batches.filter((b) => b.startedAt !== undefined);
    if (started.length === 0) {
      return { tag: "start-next-batch" };
    }
    const last = started[started.length - 1];
    const failed = last.failed + last.timedOut;
    if (failed * 100 > c.pause_on_failure_percent * last.total) {
      return {
        tag: "pause",
        val: `step ${last.group}: ${failed} of ${last.total} devices failed (more than ${c.pause_on_failure_percent}%)`,
      };
    }
    if (finished(last) < last.total) {
      return { tag: "wait", val: 30000n };
    }
    if (started.length === snapshot.batches.length) {
      return { tag: "complete" };
    }
    return { tag: "start-next-batch" };
  },
};
