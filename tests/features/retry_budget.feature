Feature: The retry budget keeps a failing pool from a retry storm
  Retries and failovers together may be only a share of the tasks submitted recently, plus a
  small reserve. When every replica fails, each task ends with its error instead of multiplying
  the load on servers that are already down.

  Scenario: A storm of failing tasks; few retries reach the servers
    Given a pool "chat" of the replicas "gpu-0" and "gpu-1"
    And each replica makes up to 3 attempts per task
    And the retry budget is 10 percent of submitted tasks, with no reserve
    And the breakers are set never to open
    And every server answers every task with 503
    When 40 tasks are submitted, 8 at a time, and each is read to its end
    Then every task ends with only End, error "POOL_UNAVAILABLE", retryable
    And the servers received at most 44 requests in all
    And the pool has counted budget refusals
