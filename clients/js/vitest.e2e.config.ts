import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["e2e/**/*.e2e.ts"],
    fileParallelism: false,
    testTimeout: 90_000,
    hookTimeout: 90_000,
    // The browser, the server and the other tests share two cores: give
    // each polled expectation time rather than fail on a slow moment.
    expect: { poll: { timeout: 15_000, interval: 50 } },
  },
});
