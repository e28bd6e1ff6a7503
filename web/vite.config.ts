// Builds the web chat into dist/. The generated contracts live outside this folder (../gen/ts),
// so their imports of @bufbuild/protobuf resolve from this package's node_modules (dedupe).
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [react()],
  resolve: {
    alias: { "@gen": fileURLToPath(new URL("../gen/ts", import.meta.url)) },
    dedupe: ["@bufbuild/protobuf"],
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: true,
  },
  server: { fs: { allow: [".."] } },
});
