import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    globalSetup: ['test/helpers/global-tmp.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
