// Lint config the team runs (`make lint`, part of `make test`).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", ".cache/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: "readonly", console: "readonly" } },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "no-restricted-properties": [
        "error",
        { object: "process", property: "env", message: "Read configuration in src/config only." },
      ],
    },
  },
  {
    // Shipped code never loads test support: the simulator, launchers and the fixed test keys.
    files: ["src/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["**/test/**"],
              message: "src/ must not import test support (test-only keys, simulator).",
            },
          ],
        },
      ],
    },
  },
  {
    // The fixed test keys (test/unit/fixed-keys.ts) are for golden-file unit tests only.
    files: ["scripts/**", "bench/**", "test/support/**", "test/integration/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["**/fixed-keys*"],
              message: "The fixed test keys are for the golden-file unit tests only.",
            },
          ],
        },
      ],
    },
  },
  {
    files: ["src/config/**", "test/**", "bench/**", "src/cli/**"],
    rules: { "no-restricted-properties": "off" },
  },
);
