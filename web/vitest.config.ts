// Unit tests of the page's logic (turn state, reconnect rules, error descriptions) in Node,
// against an in-memory GatewayService speaking gRPC-Web. The browser itself is tested by
// tests/web/ (pytest + Playwright).
import { defineConfig, mergeConfig } from "vitest/config";
import viteConfig from "./vite.config.ts";

export default mergeConfig(
  viteConfig,
  defineConfig({
    test: {
      environment: "node",
      include: ["src/**/*.test.ts"],
      testTimeout: 10_000,
    },
  }),
);
